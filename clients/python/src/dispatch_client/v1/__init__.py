"""Generated from proto/dispatch/v1 by tools/gen-clients.sh. Do not edit."""
