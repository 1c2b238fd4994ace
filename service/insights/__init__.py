"""Pure building blocks of the insight queries (trends and their kin): no I/O, no clock."""
