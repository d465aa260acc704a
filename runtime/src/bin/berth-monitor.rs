//! `berth-monitor`: the per-pod monitor process. All of its logic is in
//! [`berth_runtime::monitor`]; this only hands over the arguments.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(berth_runtime::monitor::launch(&args));
}
