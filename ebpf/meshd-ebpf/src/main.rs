//! meshd's kernel programs. One file per program kind; the maps they share live in
//! [`maps`]. Built for `bpfel-unknown-none` by the agent's build script (aya-build).
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no `AtomicU64::fetch_add`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod capture;
mod connect4;
mod connect6;
mod maps;
mod sk_lookup;
mod sock_ops;
mod sock_release;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
