//! `sluice-coordinator`: not built yet. It will keep proxies in step with the broker.

fn main() {
    eprintln!("sluice-coordinator is not built yet");
    std::process::exit(2);
}
