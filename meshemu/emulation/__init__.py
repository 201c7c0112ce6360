"""Emulation: the link series played into network namespaces (the only layer that touches the kernel)."""
