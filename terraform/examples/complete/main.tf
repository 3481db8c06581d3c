# Berth on EKS: the blob bucket, Postgres and the IRSA role, for a cluster that already exists.
#   terraform init && terraform apply -var cluster_name=my-cluster
#   terraform output -json helm_values > berth-values.json
#   helm install berth ../../../helm/berth -f berth-values.json

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "cluster_name" {
  description = "Name of the EKS cluster Berth runs on."
  type        = string
}

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

data "aws_iam_openid_connect_provider" "this" {
  url = data.aws_eks_cluster.this.identity[0].oidc[0].issuer
}

data "aws_subnets" "private" {
  filter {
    name   = "vpc-id"
    values = [data.aws_eks_cluster.this.vpc_config[0].vpc_id]
  }
  tags = {
    "kubernetes.io/role/internal-elb" = "1"
  }
}

module "berth" {
  source = "../.."

  name                               = "berth"
  vpc_id                             = data.aws_eks_cluster.this.vpc_config[0].vpc_id
  database_subnet_ids                = data.aws_subnets.private.ids
  database_client_security_group_ids = [data.aws_eks_cluster.this.vpc_config[0].cluster_security_group_id]
  oidc_provider_arn                  = data.aws_iam_openid_connect_provider.this.arn
  oidc_provider_url                  = data.aws_eks_cluster.this.identity[0].oidc[0].issuer
  namespace                          = "registry"
  service_account_name               = "berth"
  tags                               = { environment = "production" }
}

output "helm_values" {
  description = "Values for helm/berth."
  value       = module.berth.helm_values
}

output "database_endpoint" {
  description = "Postgres host:port, for the database URL Secret."
  value       = module.berth.database_endpoint
}

output "database_password_secret_arn" {
  description = "Secrets Manager secret with the database password."
  value       = module.berth.database_password_secret_arn
}
