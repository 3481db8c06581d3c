output "bucket" {
  description = "Name of the blob bucket (config.s3.bucket)."
  value       = aws_s3_bucket.blobs.id
}

output "region" {
  description = "Region of the bucket and the database (config.s3.region)."
  value       = data.aws_region.current.id
}

output "role_arn" {
  description = "IAM role for Berth's ServiceAccount (serviceAccount.annotations eks.amazonaws.com/role-arn)."
  value       = aws_iam_role.berth.arn
}

output "database_endpoint" {
  description = "Postgres host:port."
  value       = aws_db_instance.metadata.endpoint
}

output "database_name" {
  description = "Postgres database name."
  value       = aws_db_instance.metadata.db_name
}

output "database_username" {
  description = "Postgres user."
  value       = aws_db_instance.metadata.username
}

output "database_password_secret_arn" {
  description = "Secrets Manager secret holding the database password (build the URL for config.database.existingSecret from it)."
  value       = aws_db_instance.metadata.master_user_secret[0].secret_arn
}

output "helm_values" {
  description = "Values for the Helm chart (helm/berth), with the database URL to put in a Secret named <name>-database."
  value = {
    # Replicas share the bucket and the database: the chart's one-replica defaults scale out.
    replicaCount = 2
    serviceAccount = {
      annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.berth.arn }
    }
    config = {
      storage = "s3"
      s3 = {
        bucket = aws_s3_bucket.blobs.id
        region = data.aws_region.current.id
        prefix = var.s3_prefix
      }
      database = {
        existingSecret = { name = "${var.name}-database", key = "url" }
      }
    }
  }
}
