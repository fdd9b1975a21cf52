{
  "targets": [
    {
      "target_name": "kvsquash",
      "sources": [
        "<!@(node -p \"require('fs').readdirSync('csrc/core').filter(f => f.endsWith('.cc')).map(f => 'csrc/core/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('csrc/cpu').filter(f => f.endsWith('.cc')).map(f => 'csrc/cpu/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('csrc/addon').filter(f => f.endsWith('.cc')).map(f => 'csrc/addon/' + f).join(' ')\")"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "csrc/include",
        "csrc"
      ],
      "defines": ["NAPI_VERSION=9", "NAPI_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fvisibility=hidden", "-ffp-contract=off"],
      "ldflags": ["-Wl,-z,nodelete"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "MACOSX_DEPLOYMENT_TARGET": "11.0",
        "OTHER_LDFLAGS": []
      },
      "msvs_settings": {
        "VCCLCompilerTool": { "ExceptionHandling": 1, "AdditionalOptions": ["/std:c++17"] }
      }
    }
  ]
}
