//! The QEMU suite ([`qemu_test::scenarios::suite`], [`qemu_test::scenarios::features`]) against
//! the in-tree C driver `virtio_balloon`: proves the rig and sets the
//! baseline our driver must match (`rust_driver.rs` runs the same tests).

qemu_test::driver_tests!(qemu_test::Driver::C);
