"""Adversarial inputs: hostile lens files, numbers, field points (psfsim hardening)."""
