import sys

try:  # Ctrl-C while the modules import: no traceback
    from .cli import main
except KeyboardInterrupt:
    print("onnxprune: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
