mod cli;

fn main() {
    cli::exit(cli::main());
}
