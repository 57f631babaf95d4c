"""The batch service: a job runner that reads invoices in chunks and streams them to notifiers."""
