"""The SDK version, kept in its own module so packaging can read it without importing the client."""

VERSION = "0.2.0"
