"""``qt run``: an embedded Redis and a supervisor running every enabled component as its own process."""
