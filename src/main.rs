fn main() {
    std::process::exit(humanlm::cli::main());
}
