"""The daemon's background jobs: reaping, idle expiry, memory expiry, retention."""
