"""The end-to-end benchmark: Heraldo's mesh against a plain script and the SMTP ceiling.

``python -m heraldo.bench`` (``make bench``) loads a workload into a fresh PostgreSQL database,
starts Postfix's ``smtp-sink`` and, run after run, sends the same notifications three ways into it:
through the whole mesh, with a one-process ``smtplib`` script, and with ``smtp-source``. Results go
to ``var/bench/`` as JSON, plots and profiles.
"""
