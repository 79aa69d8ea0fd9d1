#!/bin/sh
# check_includes.sh - the layering of docs/DESIGN.md ("Layering"):
#   common/    includes only common/
#   handlers/  includes common/ and handlers/ (the server only through
#              handlers/bagou_handler.h, which server/ implements)
#   amqp/      includes common/ and amqp/ (workers only through the bus
#              sink the server registers)
#   server/    may include any of them
# Fails, naming each offending line, when a file breaks a rule. Run by
# make test (make check-includes); takes no time.
cd "$(dirname "$0")/.." || exit 2
bad=0
check() { # dir, forbidden directories (an ERE alternation)
	out=$(grep -nE "^[[:space:]]*#[[:space:]]*include[[:space:]]*\"($2)/" \
	      "$1"/*.c "$1"/*.h 2>/dev/null)
	if [ -n "$out" ]; then
		echo "check_includes: $1/ must not include headers of" \
		     "$(echo "$2" | sed 's,|,/ or ,g')/:" >&2
		echo "$out" >&2
		bad=1
	fi
}
check common 'server|handlers|amqp'
check handlers 'server|amqp'
check amqp 'server|handlers'
[ "$bad" = 0 ] && echo "check_includes: layering holds (common <- handlers," \
	"amqp <- server)"
exit "$bad"
