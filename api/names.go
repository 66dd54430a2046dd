package api

// The names Berth accepts, each rule in one place: manifests, the API
// server and the runtime ask these.

// IsDNSLabel reports whether s is an RFC 1123 label: 1-63 lowercase
// letters, digits and '-', starting and ending with a letter or digit.
// Route host labels and instance ids are such labels.
func IsDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// IsName reports whether s is an object name (service, namespace,
// volume, port, secret): a DNS label that starts with a letter (RFC
// 1035), so that it is a valid name under the cluster zone and never a
// number. The caller bounds the length where a name must leave room.
func IsName(s string) bool {
	return IsDNSLabel(s) && s[0] >= 'a' && s[0] <= 'z'
}

// IsPartName reports whether s can name a node or a gateway: 1-63 of
// a-z, 0-9, '-', '_' and '.', and not "." or "..". Part names become etcd
// keys, file names and certificate names, never paths that climb.
func IsPartName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}
