"""The notifier service: renders invoice notifications and delivers them over SMTP, exactly once."""
