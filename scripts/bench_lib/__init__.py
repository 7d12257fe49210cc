"""scripts/bench: the same workloads against s3mount, raw boto3 and peer mounts (s3fs-fuse,
`rclone mount`) on a local S3 server, optionally behind a delay proxy.

Modules: `servers` (moto / s3rver on loopback), `proxy` (per-request delay and request counts),
`targets` (how each contender mounts, unmounts and is found), `workloads` (what is timed and how
durability is checked), `memory` (the RSS sampler of `--memory`), `report` (markdown, JSON, PNG),
`cli` (options and the run loop).  Nothing here imports s3mount: s3mount is driven through its
command line only, as a user would.
"""
