"""``python -m cloud_api_adaptor`` runs the CLI."""

from cloud_api_adaptor.cli import main

raise SystemExit(main())
