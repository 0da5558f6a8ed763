//! Prints the OpenAPI document (`cargo run -p pier-api --example openapi_dump`).
fn main() {
    println!("{:#}", pier_api::openapi::document());
}
