from optimizer_service.cli import main

raise SystemExit(main())
