@_exported public import UVCore
