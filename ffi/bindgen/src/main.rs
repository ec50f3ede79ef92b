//! `uniffi-bindgen`: generates the Kotlin and Swift sources from the built
//! `progress_ffi` library (see `ffi/generate.sh`). Its own crate, so the
//! generator's dependencies stay out of the library apps link.

fn main() {
    uniffi::uniffi_bindgen_main()
}
