"""Templates copied by ``privet new`` (shipped inside the privet package as privet.templates)."""
