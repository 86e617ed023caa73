from infovae.cli import main

raise SystemExit(main())
