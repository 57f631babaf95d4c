"""The local SMTP sink: accepts every message, keeps it as a .eml file and shows it on the web."""
