"""The entry point of sapo-local (group `sapo`).

Its backends arrive with issue 3; until then this plugin registers nothing, so `sapo plugins`
lists the distribution without claiming backends it does not have.
"""
