"""Drop-in HTTP front ends for the services omnid replaces.

Optional: run on their own by ``omnid compat ...``; neither the daemon nor the client ever
imports this package."""
