from ccserver.cli import main

raise SystemExit(main())
