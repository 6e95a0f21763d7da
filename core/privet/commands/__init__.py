"""One module per launcher command; the click group in privet.cli only wires them."""
