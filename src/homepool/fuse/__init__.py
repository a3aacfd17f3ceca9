"""The FUSE mount: `session` speaks the kernel's protocol on /dev/fuse (the transport), `ops`
turns each request into calls on the pool (the adapter), `protocol` lays out the messages."""
