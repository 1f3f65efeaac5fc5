//! The Millrace worker. Until the data-plane work lands it only reports its version.

fn main() {
    println!("millrace-worker {}", env!("CARGO_PKG_VERSION"));
}
