"""Booting images: the qemu command line for each host and accelerator, exit codes."""
