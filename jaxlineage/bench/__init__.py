"""`python -m jaxlineage.bench`: reproduce the papers' tables on a zoo."""
