"""The coordinator console: server-rendered pages over the three services' HTTP APIs (docs/console.md)."""
