"""ELF files (``reader``) and the dynamic loader's rules, to resolve a program's libraries
inside any root without running it (``ldd``)."""
