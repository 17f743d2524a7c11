//! Installing the driver as users do: the Debian package (`make deb`) in a
//! full, systemd-booted Debian guest ([`qemu_test::scenarios::install`]).
//! `make test-install` makes the guest and the package and runs this file.

use anyhow::Result;
use qemu_test::scenarios::install;

/// Before the package C binds; after `apt install` and a reboot ours does,
/// loaded by udev, with the options of /etc/modprobe.d; on another kernel
/// C does; after `apt remove` C does and nothing of ours is left.
#[test]
fn debian_package_install() -> Result<()> {
    install::debian_package_install()
}
