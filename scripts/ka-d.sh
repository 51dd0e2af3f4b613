#!/bin/sh
# ka-d.sh: ka-deploy's golden-node command line, run by kacast.
#
#   ka-d.sh -n 3 -p sda desc [-p sdb desc2] [-x /tmp] [-X 'sdc|sdd'] [-D /dev/sda5] [-r 'grub --with=ata_piix']
#
# Same options as ka-deploy's ka-d.sh (see ka-d(1)), so existing habits and
# scripts keep working; each becomes the kacast clone option of the same
# meaning. Options kacast does not need are accepted and explained:
#   -m DRIVE, -M DRIVE FILE  MBR copy: kacast restores the boot code with grub (-r)
#   -d N                     release delay: nodes are released as they finish
# Anything after '--' goes to kacast clone unchanged (e.g. -- --new-uuids).
set -eu

KACAST=${KACAST:-kacast}
usage() {
    echo "usage: ka-d.sh -n NODES [-p DRIVE DESC]... [-x DIR]... [-X REGEX] [-D PART]... [-r 'grub|none [opts]'] [-- kacast-clone-options]" >&2
    exit 64
}

set -- "$@" --end--
nodes=
while [ "$1" != --end-- ]; do
    opt=$1; shift
    case $opt in
        -n) [ "$1" != --end-- ] || usage; nodes=$1; shift ;;
        -p) [ "$1" != --end-- ] && [ "$2" != --end-- ] || usage
            set -- "$@" -p "$1" "$2"; shift 2 ;;
        -x) [ "$1" != --end-- ] || usage; set -- "$@" -x "$1"; shift ;;
        -X) [ "$1" != --end-- ] || usage; set -- "$@" -X "$1"; shift ;;
        -D) [ "$1" != --end-- ] || usage; set -- "$@" -D "$1"; shift ;;
        -r) [ "$1" != --end-- ] || usage; set -- "$@" -r "$1"; shift ;;
        -m) [ "$1" != --end-- ] || usage
            echo "ka-d.sh: -m $1 ignored: kacast restores the boot code with -r grub" >&2; shift ;;
        -M) [ "$1" != --end-- ] && [ "$2" != --end-- ] || usage
            echo "ka-d.sh: -M $1 $2 ignored: kacast restores the boot code with -r grub" >&2; shift 2 ;;
        -d) [ "$1" != --end-- ] || usage
            echo "ka-d.sh: -d $1 ignored: kacast releases each node as soon as it is done" >&2; shift ;;
        --) while [ "$1" != --end-- ]; do set -- "$@" "$1"; shift; done ;;
        -h|--help) usage ;;
        *) echo "ka-d.sh: unknown option '$opt'" >&2; usage ;;
    esac
done
shift # --end--
[ -n "$nodes" ] || { echo "ka-d.sh: -n NODES is required" >&2; usage; }
exec "$KACAST" clone -n "$nodes" "$@"
