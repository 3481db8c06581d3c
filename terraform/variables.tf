variable "name" {
  description = "Name prefix of every resource (bucket, database, role)."
  type        = string
  default     = "berth"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 lowercase letters, digits and dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "bucket_name" {
  description = "Name of the S3 bucket for blobs; defaults to \"<name>-blobs-<account id>\"."
  type        = string
  default     = null
}

variable "bucket_force_destroy" {
  description = "Allow destroying the bucket while it still holds blobs (for throwaway environments only)."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "KMS key for bucket and database encryption; AWS-managed keys when null."
  type        = string
  default     = null
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which S3 aborts multipart uploads nobody completed (a second net behind Berth's own expiry)."
  type        = number
  default     = 3

  validation {
    condition     = var.abort_incomplete_multipart_days >= 1
    error_message = "abort_incomplete_multipart_days must be at least 1."
  }
}

variable "vpc_id" {
  description = "VPC of the database (and of the cluster that runs Berth)."
  type        = string
}

variable "database_subnet_ids" {
  description = "Private subnets for the database (at least two availability zones)."
  type        = list(string)

  validation {
    condition     = length(var.database_subnet_ids) >= 2
    error_message = "database_subnet_ids needs subnets in at least two availability zones."
  }
}

variable "database_client_security_group_ids" {
  description = "Security groups allowed to reach Postgres (the EKS nodes' or pods')."
  type        = list(string)
  default     = []
}

variable "database_client_cidr_blocks" {
  description = "CIDR blocks allowed to reach Postgres, in addition to the security groups."
  type        = list(string)
  default     = []
}

variable "database_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "database_engine_version" {
  description = "Postgres major version."
  type        = string
  default     = "17"
}

variable "database_allocated_storage" {
  description = "Initial database storage, GiB (metadata only: manifests, tags, sessions)."
  type        = number
  default     = 20
}

variable "database_max_allocated_storage" {
  description = "Storage autoscaling ceiling, GiB."
  type        = number
  default     = 200
}

variable "database_multi_az" {
  description = "Run a standby in a second availability zone."
  type        = bool
  default     = true
}

variable "database_backup_retention_days" {
  description = "Days of automated backups kept."
  type        = number
  default     = 14
}

variable "database_deletion_protection" {
  description = "Refuse to delete the database."
  type        = bool
  default     = true
}

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider, for IRSA."
  type        = string
}

variable "oidc_provider_url" {
  description = "Issuer URL of the EKS cluster's OIDC provider (with or without https://)."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace Berth runs in."
  type        = string
  default     = "registry"
}

variable "service_account_name" {
  description = "Name of Berth's Kubernetes ServiceAccount (the Helm chart's fullname by default)."
  type        = string
  default     = "berth"
}

variable "s3_prefix" {
  description = "Key prefix Berth writes under (BERTH_S3_PREFIX), to share a bucket; empty for the whole bucket."
  type        = string
  default     = ""
}
