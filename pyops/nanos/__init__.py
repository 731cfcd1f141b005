"""What Nanos reads: tuples, the file tree, the root configuration (``manifest``), the TFS
writer and reader, the disk layout, and Nanos releases."""
