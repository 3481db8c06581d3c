#!/bin/sh
# Puts together the root filesystem of Berth's image (deploy/Dockerfile, FROM scratch) at ROOT:
# the binary without symbols, the shared libraries it links, CA certificates, and the entries
# of the user it runs as. Runs in a Debian image (binutils and ca-certificates installed) with
# the C library the binary was linked against.
#   deploy/image-rootfs.sh BINARY ROOT
set -eu
binary="$1"
root="$2"

# Before glibc 2.34, name resolution loaded libnss_* modules at run time, which ldd does not
# name: the image would start and then fail every lookup.
glibc="$(getconf GNU_LIBC_VERSION | cut -d' ' -f2)"
major="${glibc%%.*}"
minor="${glibc#*.}"
minor="${minor%%.*}"
if [ "$major" -lt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -lt 34 ]; }; then
  echo "glibc $glibc is older than 2.34: pick a newer RUNTIME_IMAGE" >&2
  exit 1
fi

mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/var/lib/berth" "$root/tmp"
# Symbols and debug information are for a debugger on the host, not for the image (a panic's
# message still names its source file and line).
strip --strip-all -o "$root/usr/local/bin/berth" "$binary"
chmod 0755 "$root/usr/local/bin/berth"

# ldd names each library by the path the dynamic loader found it at; copied to the same
# paths, the loader finds them there again (without an ld.so.cache it searches its built-in
# directories, which are these).
if libraries="$(ldd "$binary" 2>&1)"; then
  if echo "$libraries" | grep "not found" >&2; then
    echo "$binary needs libraries this image lacks" >&2
    exit 1
  fi
  for library in $(echo "$libraries" | grep -o '/[^ ]*'); do
    cp -L --parents "$library" "$root"
  done
elif ! echo "$libraries" | grep -q "not a dynamic executable"; then
  echo "$libraries" >&2
  exit 1
fi

cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf '%s\n' "root:x:0:0:root:/:/nonexistent" \
  "berth:x:10001:10001:Berth:/var/lib/berth:/nonexistent" > "$root/etc/passwd"
printf '%s\n' "root:x:0:" "berth:x:10001:" > "$root/etc/group"
# glibc resolves names itself since 2.34: this only says to read /etc/hosts before DNS.
printf '%s\n' "hosts: files dns" > "$root/etc/nsswitch.conf"
# Owned by the image's user and writable by group 0, for platforms that run the container
# under an arbitrary uid in group 0 (OpenShift) instead of 10001.
chown 10001:0 "$root/var/lib/berth"
chmod 0775 "$root/var/lib/berth"
chmod 1777 "$root/tmp"
