package TxtRecord;
# A DNS TXT answer for Mail::DKIM's key queries: RECORD as character-strings of at most 255
# bytes each, for DOMAIN.
use strict;
use warnings;
use Net::DNS;

sub rr {
    my ($domain, $record) = @_;
    my $strings = join(' ', map { qq("$_") } unpack('(A255)*', $record));
    return Net::DNS::RR->new("$domain. 300 IN TXT $strings");
}

1;
