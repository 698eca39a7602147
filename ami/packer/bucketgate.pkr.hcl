# bucketgate AMI: Debian 12 + bucketgate + cache volume mapping, built with amazon-ebs.
#
#   packer build -var version=0.1.0 -var bucketgate_binary=target/release/bucketgate ami/packer
#   (run from the repository root; the binary path is relative to where packer runs)
#
# Needs Packer >= 1.7 with the Amazon plugin >= 1.2.0 (`packer init ami/packer`).
#
# CI has only Debian 12's packer 1.6.6 (Amazon builder built in), which predates the
# IMDSv2 settings and `required_plugins`. The lines between "packer>=1.7 only" markers
# are exactly those; ami/ci.sh validates the template with them cut out (and checks the
# whole file's syntax with `packer fmt`). Keep everything else 1.6.6-compatible.
#
# Credentials for the build come from the usual AWS chain of whoever runs packer; the
# image itself carries none: the gateway uses the instance role through IMDSv2.

# packer>=1.7 only: begin
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      version = ">= 1.2.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
# packer>=1.7 only: end

variable "version" {
  type        = string
  description = "bucketgate version baked into the image; tags the AMI and is part of its name."
}

variable "bucketgate_binary" {
  type        = string
  description = "Path of the bucketgate executable to install (e.g. target/release/bucketgate, x86_64 Linux)."
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "instance_type" {
  type        = string
  default     = "c5.4xlarge"
  description = "Build instance type; also the documented File Gateway reference host (16 vCPU, 32 GiB)."
}

variable "source_ami_name" {
  type        = string
  default     = "debian-12-amd64-*"
  description = "Name filter for the base image: Debian 12 (bookworm), official cloud image."
}

variable "source_ami_owner" {
  type        = string
  default     = "136693071363"
  description = "AWS account that publishes the official Debian AMIs."
}

variable "ssh_username" {
  type    = string
  default = "admin"
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet for the build instance (needs a route to the Debian mirrors); empty = default VPC."
}

variable "root_volume_size_gib" {
  type        = number
  default     = 80
  description = "Root volume (File Gateway reference: 80 GB)."
}

variable "root_volume_type" {
  type    = string
  default = "gp3"
}

variable "cache_volume_size_gib" {
  type        = number
  default     = 150
  description = "Cache EBS volume created with every instance (File Gateway minimum: 150 GiB)."
}

variable "cache_volume_type" {
  type    = string
  default = "gp3"
}

variable "cache_volume_iops" {
  type        = number
  default     = 3000
  description = "Provisioned IOPS of the cache volume (gp3: 3000 included, up to 16000; io1/io2)."
}

variable "cache_volume_throughput" {
  type        = number
  default     = 250
  description = "gp3 throughput of the cache volume in MiB/s (125 included, up to 1000). Ignored for other types."
}

variable "cache_device_name" {
  type        = string
  default     = "/dev/sdb"
  description = "Block-device-mapping name of the cache volume; the cache-disk unit looks for it by this name first."
}

variable "cache_delete_on_termination" {
  type        = bool
  default     = false
  description = "Keep the cache volume when the instance is terminated: it may hold data not yet uploaded."
}

variable "encrypt_volumes" {
  type    = bool
  default = true
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "KMS key for the volumes; empty = the account's default EBS key."
}

variable "ami_name_prefix" {
  type    = string
  default = "bucketgate"
}

variable "ami_users" {
  type        = list(string)
  default     = []
  description = "Other AWS accounts that may launch the AMI."
}

locals {
  build_time = regex_replace(timestamp(), "[- TZ:]", "")
  ami_name   = "${var.ami_name_prefix}-${var.version}-${local.build_time}"
  # gp3 takes a throughput; the other types refuse one.
  cache_throughput = var.cache_volume_type == "gp3" ? var.cache_volume_throughput : null
  cache_iops       = contains(["gp3", "io1", "io2"], var.cache_volume_type) ? var.cache_volume_iops : null
  # The gp3 baseline (included in the price) for the root volume.
  root_throughput = var.root_volume_type == "gp3" ? 125 : null
  root_iops       = var.root_volume_type == "gp3" ? 3000 : null
  tags = {
    Name        = local.ami_name
    Application = "bucketgate"
    Version     = var.version
    BaseImage   = "{{ .SourceAMIName }}"
    BuildTime   = local.build_time
  }
}

source "amazon-ebs" "bucketgate" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.source_ami_owner]
    most_recent = true
  }

  ssh_username  = var.ssh_username
  ena_support   = true
  sriov_support = true

  # packer>=1.7 only: begin
  # IMDSv2 only (session token required), on the build instance...
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  # ...and on every instance launched from the AMI unless its launch template says
  # otherwise (the README's launch template sets http_tokens = required as well).
  imds_support = "v2.0"
  # packer>=1.7 only: end

  ami_name        = local.ami_name
  ami_description = "bucketgate ${var.version}: NFSv3 file gateway to S3 (Debian 12)"
  ami_users       = var.ami_users
  encrypt_boot    = var.encrypt_volumes
  kms_key_id      = var.kms_key_id
  tags            = local.tags
  snapshot_tags   = local.tags
  run_tags        = { Name = "packer-build-${local.ami_name}", Application = "bucketgate" }

  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = var.root_volume_size_gib
    volume_type           = var.root_volume_type
    iops                  = local.root_iops
    throughput            = local.root_throughput
    delete_on_termination = true
    encrypted             = var.encrypt_volumes
  }

  # Every instance launched from the AMI gets an empty cache volume here, formatted at
  # its first boot. Not attached to the build instance: nothing is written to it.
  ami_block_device_mappings {
    device_name           = var.cache_device_name
    volume_size           = var.cache_volume_size_gib
    volume_type           = var.cache_volume_type
    iops                  = local.cache_iops
    throughput            = local.cache_throughput
    delete_on_termination = var.cache_delete_on_termination
    encrypted             = var.encrypt_volumes
    kms_key_id            = var.kms_key_id
  }
}

build {
  sources = ["source.amazon-ebs.bucketgate"]

  provisioner "shell" {
    inline = [
      # cloud-init may still be installing packages on the fresh build instance.
      "sudo cloud-init status --wait >/dev/null 2>&1 || true",
      "rm -rf /tmp/bucketgate-ami && mkdir -p /tmp/bucketgate-ami",
    ]
  }

  # The whole ami/ directory: provision/, files/, grafana/, prometheus/, README.md.
  provisioner "file" {
    source      = "${path.root}/../"
    destination = "/tmp/bucketgate-ami"
  }

  provisioner "file" {
    source      = var.bucketgate_binary
    destination = "/tmp/bucketgate-ami/bucketgate"
  }

  provisioner "shell" {
    inline = [
      "chmod 0755 /tmp/bucketgate-ami/bucketgate",
      "sudo bash /tmp/bucketgate-ami/provision/provision.sh --binary /tmp/bucketgate-ami/bucketgate --version '${var.version}' --cache-device-name '${var.cache_device_name}'",
      "sudo bash /tmp/bucketgate-ami/provision/cleanup-image.sh",
    ]
  }
}
