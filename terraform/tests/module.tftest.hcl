# Plans the module against a mocked AWS provider (no account needed): `terraform test`.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = {
      account_id = "123456789012"
    }
  }
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
}

variables {
  vpc_id              = "vpc-0123456789abcdef0"
  database_subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
  oidc_provider_arn   = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE"
  oidc_provider_url   = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE"
}

run "bucket_is_private_encrypted_unversioned_and_aborts_stale_uploads" {
  command = plan

  assert {
    condition     = aws_s3_bucket.blobs.bucket == "berth-blobs-123456789012"
    error_message = "the bucket is named after the module and the account"
  }
  assert {
    condition = alltrue([
      aws_s3_bucket_public_access_block.blobs.block_public_acls,
      aws_s3_bucket_public_access_block.blobs.block_public_policy,
      aws_s3_bucket_public_access_block.blobs.ignore_public_acls,
      aws_s3_bucket_public_access_block.blobs.restrict_public_buckets,
    ])
    error_message = "every public access is blocked"
  }
  assert {
    condition     = one(one(aws_s3_bucket_server_side_encryption_configuration.blobs.rule).apply_server_side_encryption_by_default).sse_algorithm == "AES256"
    error_message = "blobs are encrypted at rest"
  }
  assert {
    condition     = one(aws_s3_bucket_versioning.blobs.versioning_configuration).status == "Disabled"
    error_message = "versioning stays off"
  }
  assert {
    condition     = one(one(aws_s3_bucket_lifecycle_configuration.blobs.rule).abort_incomplete_multipart_upload).days_after_initiation == var.abort_incomplete_multipart_days
    error_message = "incomplete multipart uploads are aborted"
  }
}

run "database_is_encrypted_and_private" {
  command = plan

  assert {
    condition     = aws_db_instance.metadata.storage_encrypted && !aws_db_instance.metadata.publicly_accessible
    error_message = "Postgres is encrypted and not public"
  }
  assert {
    condition     = aws_db_instance.metadata.engine == "postgres" && aws_db_instance.metadata.manage_master_user_password
    error_message = "Postgres with a password kept in Secrets Manager"
  }
}

run "kms_key_encrypts_bucket_and_database" {
  command = plan

  variables {
    kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
  }

  assert {
    condition     = one(one(aws_s3_bucket_server_side_encryption_configuration.blobs.rule).apply_server_side_encryption_by_default).sse_algorithm == "aws:kms"
    error_message = "with a key, the bucket uses SSE-KMS"
  }
  assert {
    condition     = aws_db_instance.metadata.kms_key_id == var.kms_key_arn
    error_message = "with a key, the database uses it"
  }
}

run "invalid_subnets_are_refused" {
  command = plan

  variables {
    database_subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa"]
  }

  expect_failures = [var.database_subnet_ids]
}
