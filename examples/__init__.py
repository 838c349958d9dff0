"""The example apps (also shipped in the wheel as ``clerk_tinybird_middleware.examples``)."""
