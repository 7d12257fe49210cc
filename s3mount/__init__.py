"""s3mount: mount an S3 bucket (or a prefix of one) as a directory through FUSE."""

__version__ = "0.1.0"
