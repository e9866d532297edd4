"""The entry point of sapo-gdrive (group `sapo`).

Its backends arrive with issue 4; until then this plugin registers nothing, so `sapo plugins`
lists the distribution without claiming backends it does not have.
"""
