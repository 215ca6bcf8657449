"""The ``facesearch`` command: an app on top of the library (it imports no other app).

- ``main``: argument parsing and dispatch; ``embed``, ``eval pairs|calibrate``. Tests:
  ``tests/integration/test_pipeline_embed.py``, ``tests/integration/test_ident_eval_cli.py``.
- ``client_commands``: ``enroll``, ``identify``, ``verify``, ``delete``, ``list`` against a running
  server. Tests: ``tests/integration/test_server_cli.py``.
- ``eval_ident``: ``eval ident``, the 1:N open-set evaluation. Tests:
  ``tests/integration/test_ident_eval_cli.py``.
- ``models``: ``models promote``. Tests: ``tests/integration/test_promotion.py``.
"""
