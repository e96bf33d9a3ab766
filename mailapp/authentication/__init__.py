"""Mail authentication: who really sent a message, and what we vouch for when we pass it on."""
