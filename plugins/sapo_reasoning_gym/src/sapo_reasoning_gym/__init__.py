"""reasoning-gym's procedural datasets as sapo tasks: ``rg:<dataset>`` (see README.md)."""

PREFIX = "rg:"
